"""C-STORE SCU (pynetdicom): send datasets to a peer AE, e.g. the results of a series the SCP received."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from backend.config import Settings
from backend.pacs.client import PacsError, PacsNotConfigured, PacsUnavailable

log = logging.getLogger("dualseg.pacs.dimse")


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


def forward_peer(settings: Settings) -> Peer | None:
    if settings.scp_forward_ae and settings.scp_forward_host and settings.scp_forward_port:
        return Peer(settings.scp_forward_ae, settings.scp_forward_host, int(settings.scp_forward_port))
    return None


def c_store(settings: Settings, datasets: Sequence[Dataset], peer: Peer | None = None,
            timeout_s: float | None = None) -> list[str]:
    """Send every dataset in one association; returns their SOP Instance UIDs. Association failures
    are ``PacsUnavailable`` (retry later); a refused instance is ``PacsError``."""
    from pynetdicom import AE

    peer = peer or forward_peer(settings)
    if peer is None:
        raise PacsNotConfigured("no C-STORE peer: set DUALSEG_SCP_FORWARD_AE, _HOST and _PORT")
    ae = AE(ae_title=settings.scp_ae_title)
    timeout = timeout_s or settings.pacs_timeout_s
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        syntaxes: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for ds in datasets:
            meta = getattr(ds, "file_meta", None)
            ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
            if str(ds.SOPClassUID) == sop_class and ts and ts not in syntaxes:
                syntaxes.insert(0, ts)
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise PacsUnavailable(f"C-STORE: no association with {peer.ae_title}@{peer.host}:{peer.port} "
                              "(peer down, or our AE title is not accepted)")
    sent: list[str] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise PacsUnavailable(f"C-STORE to {peer.ae_title}: no response (connection lost)")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success and warnings
                raise PacsError(f"C-STORE to {peer.ae_title} refused SOP instance {ds.SOPInstanceUID} "
                                f"(status 0x{code:04X})")
            sent.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    log.info("C-STORE: sent %d instance(s) to %s", len(sent), peer.ae_title)
    return sent
