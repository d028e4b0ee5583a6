"""The dtypes fancli knows: each one's size and how numpy reads it. Counting bytes (a report's totals)
needs this table and nothing else of `tensors`, so it has a module of its own."""

from __future__ import annotations

#: dtype name (torch's, without "torch.") -> (bytes per element, numpy dtype; "bf16" is decoded by hand)
DTYPES: dict[str, tuple[int, str]] = {
    "float64": (8, "<f8"),
    "float32": (4, "<f4"),
    "float16": (2, "<f2"),
    "bfloat16": (2, "bf16"),
    "int64": (8, "<i8"),
    "int32": (4, "<i4"),
    "int16": (2, "<i2"),
    "int8": (1, "i1"),
    "uint8": (1, "u1"),
    "uint32": (4, "<u4"),  # MLX's packed quantized weights
    "bool": (1, "?"),
    # one byte each, decoded through a table of their 256 codes (numpy has no such dtypes)
    "float8_e4m3fn": (1, "f8"),
    "float8_e5m2": (1, "f8"),
    "float8_e4m3fnuz": (1, "f8"),
    "float8_e5m2fnuz": (1, "f8"),
    "float8_e8m0fnu": (1, "f8"),
}
FLOATING = ("float64", "float32", "float16", "bfloat16")
#: Floating dtypes narrower than float16: FP8 is decoded by table (`FP8`); float6 and float4 are packed
#: below a byte and have no data handle, so no statistics (a note says so).
LOW_PRECISION_FLOATING = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                          "float8_e8m0fnu", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn")
