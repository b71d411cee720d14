"""The prompt blocks routing reasons about: hashed as vLLM's prefix cache hashes them, each block's
hash covering its parent's hash and its own token ids, so one block stands for the whole prefix up
to it. Python hashes ints and tuples of ints the same in every process, so every frontend and
engine worker agrees."""


def block_hashes(token_ids: list[int], block_size: int, parent: int = 0,
                 extra_keys: dict[int, int] | None = None) -> list[int]:
    """One chained hash per full block of `token_ids` (a partial last block has none), the first
    chained to `parent` (0: the start of a prompt). `extra_keys` (position -> key): what stands at a
    position beyond its token id, an image's content hash at its placeholder, as vLLM's block hashes
    carry multimodal hashes as extra keys; a block covers the keys of its positions."""
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        block = token_ids[start:start + block_size]
        if extra_keys:
            block = [*block, *(key for position, key in sorted(extra_keys.items())
                               if start <= position < start + block_size)]
        parent = hash((parent, *block))
        hashes.append(parent)
    return hashes
