"""PACS integration (torch-free): DICOMweb pull/push (QIDO-RS, WADO-RS, STOW-RS), DIMSE C-STORE forward,
import of corrected DICOM SEGs, and the bookkeeping the API, the worker and the SCP share.

- ``client``   the DICOMweb client wrapper (roots and auth from Settings, errors mapped to domain errors)
- ``ingest``   files of one series on disk → case + queued segmentation job (the upload code path)
- ``pulls``    a PACS pull request: created by the API, carried out by the worker (``dualseg.pacs.pull``)
- ``pushes``   results (SEG + entropy Parametric Map) or a correction back to the PACS
- ``imports``  a corrected SEG in the PACS → a correction of its case; the periodic QIDO poll
- ``dimse``    C-STORE SCU (forward of results to a peer AE)
- ``ledger``   small JSON records under ``pacs/`` in the artifact store (pull/push state, seen instances)

See docs/pacs.md.
"""
