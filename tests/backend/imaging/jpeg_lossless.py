"""A minimal JPEG Lossless (ITU T.81 process 14, selection value 1) encoder for test data.

pydicom cannot *encode* JPEG Lossless (its plugins only decode it), so the tests make their own
compressed files: one grayscale component, predictor 1 (left neighbour; first column uses the sample
above, the very first sample 2^(P-1)), point transform 0, and a flat Huffman table (17 categories,
all 5-bit codes). Decoders (pylibjpeg-libjpeg, GDCM) accept any valid table.
"""

from __future__ import annotations

import struct

import numpy as np


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.nbits = 0

    def write(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.nbits += 1
            if self.nbits == 8:
                self._flush_byte()

    def _flush_byte(self) -> None:
        byte = self.acc & 0xFF
        self.out.append(byte)
        if byte == 0xFF:
            self.out.append(0x00)  # byte stuffing
        self.acc = 0
        self.nbits = 0

    def finish(self) -> bytes:
        if self.nbits:
            pad = 8 - self.nbits
            self.acc = (self.acc << pad) | ((1 << pad) - 1)
            self.nbits = 8
            self._flush_byte()
        return bytes(self.out)


def encode_jpeg_lossless(image: np.ndarray, precision: int = 16) -> bytes:
    """Encode a 2D unsigned integer image (rows, cols) as a JPEG Lossless SV1 codestream."""
    if image.ndim != 2 or image.dtype.kind != "u":
        raise ValueError("expected a 2D unsigned integer image")
    rows, cols = image.shape
    px = image.astype(np.int64)
    modulus = 1 << 16
    bits = _BitWriter()
    for r in range(rows):
        for c in range(cols):
            if r == 0 and c == 0:
                pred = 1 << (precision - 1)
            elif c == 0:
                pred = int(px[r - 1, c])
            else:
                pred = int(px[r, c - 1])
            diff = (int(px[r, c]) - pred) % modulus
            if diff > 32768:
                diff -= modulus
            ssss = 16 if diff == 32768 else abs(diff).bit_length()
            bits.write(ssss, 5)  # flat table: symbol s has the 5-bit code s
            if 0 < ssss < 16:
                extra = diff if diff > 0 else diff + (1 << ssss) - 1
                bits.write(extra, ssss)
    scan = bits.finish()

    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes of length 5
    dht = b"\x00" + counts + bytes(range(17))
    sof = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs, Td/Ta, Ss=predictor 1, Se, Ah/Al
    out = bytearray(b"\xff\xd8")
    out += b"\xff\xc4" + struct.pack(">H", len(dht) + 2) + dht
    out += b"\xff\xc3" + struct.pack(">H", len(sof) + 2) + sof
    out += b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos
    out += scan + b"\xff\xd9"
    return bytes(out)
