// OHIF v3 configuration for the dualseg deployment (docker-compose.yml service "ohif").
// The viewer reads from Orthanc through the same origin (/dicom-web is proxied by ohif-nginx.conf), so no
// CORS setup is needed and the browser never sees Orthanc credentials. DICOM SEGs (dualseg results and
// corrections) open as segmentation overlays; the entropy Parametric Map opens as a volume (fusion) overlay.
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'dualseg PACS (Orthanc)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
