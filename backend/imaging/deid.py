"""De-identification of DICOM datasets and NIfTI headers (pure policy; no keys, no database).

DICOM: the DICOM PS3.15 Annex E **Basic Application Level Confidentiality Profile** (Table E.1-1) with
the **Retain UIDs Option**, applied recursively (sequence items included):

- PatientID and PatientName are replaced by a pseudonym chosen by the caller (action D; the name
  as ``<pseudonym>^``, a family name);
- the Type 2 identifying attributes the image IODs require are emptied (action Z): birth date, sex,
  accession number, study ID, study date and time, content date and time, referring physician ...;
- every other attribute of the table is removed (action X), where the table allows X (X/Z, X/D, X/Z/D):
  names of operators and physicians, institution, station, device serial number, series/study
  descriptions, protocol name, other patient IDs, addresses, comments, all other dates and times ...;
- private attributes, curves (groups 50xx) and overlays (groups 60xx, a superset of the profile's overlay
  data and comments) are removed, and so are the AE titles and private information of the file meta;
- UIDs are kept (Retain UIDs Option, 113110), so derived objects still reference the series in the PACS;
- PatientIdentityRemoved = YES, DeidentificationMethod, DeidentificationMethodCodeSequence (113100 Basic
  profile, 113110 Retain UIDs; scheme DCM) and LongitudinalTemporalInformationModified = REMOVED are set.

Geometry, pixel data and acquisition parameters are not in the table and stay as they are.

NIfTI: the free-text header fields (descrip, aux_file, intent_name, db_name) are cleared and header
extensions (which may carry a DICOM header or comments) are dropped; the voxel data, scaling and
sform/qform are written back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import nibabel as nib
from nibabel.arrayproxy import ArrayProxy
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = [
    "IDENTITY_KEYWORDS",
    "NIFTI_TEXT_FIELDS",
    "deidentify",
    "identity_of",
    "pseudonym_source",
    "scrub_nifti",
]

# fmt: off
#: Action D of Table E.1-1: replaced by the pseudonym.
REPLACE = ("PatientName", "PatientID")

#: Action Z (and Z/D, X/Z/D for Type 2 attributes of CT/MR images): kept but emptied.
EMPTY = (
    "AccessionNumber", "ContentCreatorName", "ContentDate", "ContentTime", "ContrastBolusAgent",
    "FillerOrderNumberImagingServiceRequest", "PatientBirthDate", "PatientSex",
    "PlacerOrderNumberImagingServiceRequest", "ReferringPhysicianName", "StudyDate", "StudyID", "StudyTime",
    "VerifyingObserverIdentificationCodeSequence",
)

#: Action X, and X/Z, X/D, X/Z/D done as X (attributes that CT/MR images may omit).
REMOVE = (
    # patient
    "AdditionalPatientHistory", "Allergies", "BranchOfService", "CountryOfResidence", "EthnicGroup",
    "InsurancePlanIdentification", "IssuerOfPatientID", "LastMenstrualDate", "MedicalAlerts",
    "MedicalRecordLocator", "MilitaryRank", "Occupation", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientAddress", "PatientAge", "PatientBirthName", "PatientBirthTime",
    "PatientComments", "PatientInsurancePlanCodeSequence", "PatientMotherBirthName",
    "PatientPrimaryLanguageCodeSequence", "PatientPrimaryLanguageModifierCodeSequence",
    "PatientReligiousPreference", "PatientSexNeutered", "PatientSize", "PatientState",
    "PatientTelephoneNumbers", "PatientTransportArrangements", "PatientWeight", "PregnancyStatus",
    "ReferencedPatientAliasSequence", "ReferencedPatientSequence", "RegionOfResidence",
    "ResponsibleOrganization", "ResponsiblePerson", "SmokingStatus", "SpecialNeeds",
    # visit and admission
    "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence", "AdmittingDiagnosesDescription",
    "AdmittingTime", "CurrentPatientLocation", "DischargeDiagnosisDescription", "IssuerOfAdmissionID",
    "IssuerOfServiceEpisodeID", "PatientInstitutionResidence", "ScheduledPatientInstitutionResidence",
    "ServiceEpisodeDescription", "ServiceEpisodeID", "VisitComments",
    # study, series, request and procedure steps
    "AcquisitionComments", "AcquisitionContextSequence", "AcquisitionDate", "AcquisitionDateTime",
    "AcquisitionDeviceProcessingDescription", "AcquisitionProtocolDescription", "AcquisitionTime",
    "ActualHumanPerformersSequence", "CommentsOnThePerformedProcedureStep", "CurveDate", "CurveTime",
    "DerivationDescription", "FrameComments", "HumanPerformerName", "HumanPerformerOrganization",
    "IdentifyingComments", "ImageComments", "ImagePresentationComments", "ImagingServiceRequestComments",
    "InstanceCreationDate", "InstanceCreationTime", "ModifiedImageDescription", "OrderCallbackPhoneNumber",
    "OrderEnteredBy", "OrderEntererLocation", "OverlayDate", "OverlayTime", "PerformedLocation",
    "PerformedProcedureStepDescription", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
    "PerformedStationNameCodeSequence", "PreMedication", "ProtocolName", "ReasonForStudy",
    "ReasonForTheImagingServiceRequest", "ReferencedPerformedProcedureStepSequence",
    "ReferencedStudySequence", "RequestAttributesSequence", "RequestedContrastAgent",
    "RequestedProcedureComments", "RequestedProcedureDescription", "RequestedProcedureID",
    "RequestedProcedureLocation", "ScheduledHumanPerformersSequence", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "ScheduledStationAETitle",
    "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
    "ScheduledStationNameCodeSequence", "ScheduledStudyLocation", "ScheduledStudyLocationAETitle",
    "SeriesDate", "SeriesDescription", "SeriesTime", "StudyComments", "StudyDescription", "StudyIDIssuer",
    "TimezoneOffsetFromUTC",
    # people
    "AuthorObserverSequence", "ContentCreatorIdentificationCodeSequence", "CustodialOrganizationSequence",
    "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults",
    "IntendedRecipientsOfResultsIdentificationSequence", "OperatorIdentificationSequence", "OperatorsName",
    "ParticipantSequence", "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName",
    "PersonAddress", "PersonIdentificationCodeSequence", "PersonName", "PersonTelephoneNumbers",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence", "ReferringPhysicianAddress",
    "ReferringPhysicianIdentificationSequence", "ReferringPhysicianTelephoneNumbers", "RequestingPhysician",
    "RequestingService", "ReviewerName", "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledPerformingPhysicianName", "VerifyingObserverName", "VerifyingObserverSequence",
    "VerifyingOrganization",
    # institution and equipment
    "CassetteID", "DetectorID", "DeviceSerialNumber", "GantryID", "GeneratorID", "InstitutionAddress",
    "InstitutionCodeSequence", "InstitutionName", "InstitutionalDepartmentName", "ModifyingDeviceID",
    "ModifyingDeviceManufacturer", "PlateID", "StationName",
    # interpretation and results
    "Impressions", "InterpretationApproverSequence", "InterpretationAuthor",
    "InterpretationDiagnosisDescription", "InterpretationIDIssuer", "InterpretationRecorder",
    "InterpretationText", "InterpretationTranscriber", "PhysicianApprovingInterpretation", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "DistributionAddress", "DistributionName",
    # free text, graphics, signatures and history
    "Arbitrary", "ConfidentialityConstraintOnPatientDataDescription", "ContentSequence",
    "ContributionDescription", "DataSetTrailingPadding", "DigitalSignatureUID", "DigitalSignaturesSequence",
    "GraphicAnnotationSequence", "IconImageSequence", "MAC", "ModifiedAttributesSequence",
    "OriginalAttributesSequence", "ReferencedDigitalSignatureSequence", "ReferencedSOPInstanceMACSequence",
    "TextComments", "TextString", "TopicAuthor", "TopicKeywords", "TopicSubject", "TopicTitle",
)

#: File meta attributes that name the sending stations or carry private data.
REMOVE_META = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
               "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation")

#: What the private mapping keeps of the original (see ``identity_of``).
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "PatientBirthDate", "PatientSex",
    "PatientAge", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "StudyDescription",
    "SeriesDescription", "InstitutionName", "ReferringPhysicianName",
)

METHOD = "PS3.15 Basic Profile, Retain UIDs Option (dualseg)"
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113110", "Retain UIDs Option"),
)

NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
# fmt: on


def _tags(keywords: tuple[str, ...]) -> frozenset[BaseTag]:
    tags = {keyword: tag_for_keyword(keyword) for keyword in keywords}
    unknown = sorted(k for k, t in tags.items() if t is None)
    if unknown:
        raise RuntimeError(f"not DICOM keywords: {unknown}")
    return frozenset(Tag(t) for t in tags.values() if t is not None)


REPLACE_TAGS = _tags(REPLACE)
EMPTY_TAGS = _tags(EMPTY)
REMOVE_TAGS = _tags(REMOVE)


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    return tag.group % 2 == 0 and (0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF)


def _dummy(vr: str, pseudonym: str) -> str:
    """The pseudonym as a value: a person name gets it as its family name (``DSG-…^``)."""
    return f"{pseudonym}^" if vr == "PN" else pseudonym


def _scrub(ds: Dataset, pseudonym: str) -> None:
    """Apply the D, X and Z actions at this level and inside every sequence item."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag in REMOVE_TAGS or _is_curve_or_overlay(tag):
            del ds[tag]
        elif tag in EMPTY_TAGS:
            ds[tag].value = Sequence() if elem.VR == "SQ" else ""
        elif tag in REPLACE_TAGS:
            ds[tag].value = _dummy(elem.VR, pseudonym)
        elif elem.VR == "SQ":
            for item in elem.value:
                _scrub(item, pseudonym)


def _mark(ds: Dataset, pseudonym: str) -> None:
    ds.PatientName = _dummy("PN", pseudonym)
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def deidentify(ds: Dataset, pseudonym: str) -> Dataset:
    """De-identify ``ds`` in place (see the module docstring) and return it.

    ``pseudonym`` becomes the PatientID and the family name of PatientName (at most 63 characters, no
    backslash or caret).
    """
    if not pseudonym or len(pseudonym) > 63 or "\\" in pseudonym or "^" in pseudonym:
        raise ValueError("the pseudonym must be 1-63 characters without a backslash or caret")
    _scrub(ds, pseudonym)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in REMOVE_META:
            if keyword in meta:
                delattr(meta, keyword)
    _mark(ds, pseudonym)
    return ds


def _text(value: object) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def identity_of(ds: Dataset) -> dict[str, str]:
    """The identifying attributes of ``ds`` that are present (``IDENTITY_KEYWORDS``), as text.

    OtherPatientIDsSequence items are folded into ``OtherPatientIDs``.
    """
    out = {k: _text(ds.get(k)) for k in IDENTITY_KEYWORDS if ds.get(k) not in (None, "")}
    ids = [out["OtherPatientIDs"]] if "OtherPatientIDs" in out else []
    ids += [str(item.PatientID) for item in ds.get("OtherPatientIDsSequence", []) if item.get("PatientID")]
    if ids:
        out["OtherPatientIDs"] = "\\".join(ids)
    return out


def pseudonym_source(ds: Dataset) -> str:
    """What a patient's pseudonym is derived from: the PatientID, else the name, else the study UID
    (so patients without an ID do not all share one pseudonym)."""
    for keyword, label in (("PatientID", "id"), ("PatientName", "name"), ("StudyInstanceUID", "study")):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return f"{label}:{value}"
    return "none:"


def scrub_nifti(path: Path) -> None:
    """Clear the free-text fields and extensions of the NIfTI header at ``path`` (rewritten in place)."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path.name} is not a NIfTI image")
    header = img.header.copy()
    for name in NIFTI_TEXT_FIELDS:
        if name in header:
            header[name] = b""
    header.extensions.clear()
    proxy = cast(ArrayProxy, img.dataobj)
    slope, inter = proxy.slope, proxy.inter
    out = type(img)(proxy.get_unscaled(), None, header)
    out.header.set_slope_inter(slope, inter)
    tmp = path.with_name(f"scrubbed-{path.name}")
    nib.save(out, str(tmp))
    os.replace(tmp, path)
