-- dualseg hook for Orthanc: when an image series becomes stable (no new instance for "StableAge"
-- seconds), ask dualseg to segment it. dualseg then fetches the series by WADO-RS, segments it and
-- stores the DICOM SEG and the entropy Parametric Map back into the same study by STOW-RS.
--
-- Configuration, in the Orthanc configuration file (environment variables are substituted):
--   "Dualseg": {
--     "Url": "http://api:8000",              -- dualseg API base URL (required; empty disables the hook)
--     "Token": "${DUALSEG_ORTHANC_TOKEN}",   -- bearer token of role annotator (`dualseg tokens create`)
--     "Modalities": ["CT", "MR"]             -- only these modalities are sent
--   }
-- The HTTP timeout is Orthanc's global "HttpTimeout" option (seconds). The call is made once: when
-- dualseg is down, the series is not queued (send it later with POST /api/v1/pacs/segment).
-- dualseg's own outputs (Modality SEG / OT, Manufacturer "dualseg") are never sent back.

local function contains(list, value)
  for _, item in ipairs(list) do
    if item == value then
      return true
    end
  end
  return false
end

function OnStableSeries(seriesId, tags, metadata)
  local cfg = GetOrthancConfiguration()['Dualseg']
  if cfg == nil or cfg['Url'] == nil or cfg['Url'] == '' then
    return
  end
  local modality = tags['Modality'] or ''
  local modalities = cfg['Modalities'] or { 'CT', 'MR' }
  if not contains(modalities, modality) or tags['Manufacturer'] == 'dualseg' then
    return
  end
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local study = ParseJson(RestApiGet('/studies/' .. series['ParentStudy']))
  local body = DumpJson({
    study_uid = study['MainDicomTags']['StudyInstanceUID'],
    series_uid = tags['SeriesInstanceUID'],
  }, true)
  local headers = { ['Content-Type'] = 'application/json', ['Expect'] = '' }
  local token = cfg['Token'] or ''
  if token ~= '' then
    headers['Authorization'] = 'Bearer ' .. token
  end
  local url = string.gsub(cfg['Url'], '/+$', '') .. '/api/v1/pacs/segment'
  local ok, answer = pcall(HttpPost, url, body, headers)
  if ok and answer ~= nil then
    print('dualseg: series ' .. tags['SeriesInstanceUID'] .. ' sent for segmentation: ' .. answer)
  else
    print('dualseg: could not send series ' .. tags['SeriesInstanceUID'] .. ': ' .. tostring(answer))
  end
end
