"""Dynamic masking: token (``mlm``), whole-word (``wwm``) and SpanBERT span masking of packed
rows, vectorised and deterministic (a row's mask depends on its key and its tokens only).

Modules: ``hashing`` (counter-based random numbers: no RNG state to save or restore; also
``content_keys`` for static masking), ``spans`` (SpanBERT's span placement over whole
words), ``masker`` (``MaskingConfig``, ``mask_batch``, statistics), ``boundaries`` (each
predicted token's span boundaries, for SpanBERT's span boundary objective).
"""

from data_pipeline.masking.boundaries import span_boundaries
from data_pipeline.masking.hashing import content_keys, row_keys
from data_pipeline.masking.masker import (
    IGNORE_INDEX,
    KINDS,
    MaskingConfig,
    mask_batch,
    masking_stats,
)

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "MaskingConfig",
    "content_keys",
    "mask_batch",
    "masking_stats",
    "row_keys",
    "span_boundaries",
]
