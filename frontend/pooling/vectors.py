"""Pooled vectors as a JSON answer carries them: floats, or base64 of little-endian float32 (what
OpenAI's `encoding_format: base64` means, and what its SDK decodes)."""
import base64

import numpy as np

from frontend.http import off_the_loop_if

# Up to about this many floats a JSON answer is written on the event loop: less than the hop to a thread.
INLINE_FLOATS = 16_384


def as_encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


async def answer_off_the_loop(vectors: list[np.ndarray], build, *args):
    """`build(vectors, *args)`, on a worker thread when the vectors are large."""
    return await off_the_loop_if(sum(vector.size for vector in vectors) > INLINE_FLOATS, build, vectors, *args)
