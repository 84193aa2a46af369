"""The served model: a custom `mlflow.pyfunc.PythonModel` (backbone + heads) that finds products.

`mlflow.pytorch.log_model` would export a torch program without tokenisation or
preprocessing, so the logged model carries the backbone *spec* (name, weights source,
seed, fingerprint) and the head weights as artifacts, and rebuilds the backbone through
the one factory when loaded.

Input (the signature comes from `predict`'s type hints): a list of `Query` rows, each a
`text` or an `image` given as encoded bytes (base64 text in JSON), never a file path:
a served model reads nothing from the server's disk. Output: one `Answer` per row, the
L2-normalised embedding and, with `params={"top_k": k}`, the k nearest items of the
catalog packed with the model at registration (the catalog those heads make of the
cached features): item id, score, category, image reference and url. Bad input is an
`MlflowException` (HTTP 400 from `mlflow models serve`) that names the row.

    curl localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": [{"text": "red denim shorts"}], "params": {"top_k": 5}}'

A checkpoint is logged cheaply (`log_heads_model`: no catalog, no input example, no pip
inference) once per epoch; registration packs the catalog and the input example into the
chosen logged model and registers that very model (`register_logged_model`).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pydantic
from mlflow.exceptions import MlflowException

from protocol.io import read_json, write_json

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PIP_REQUIREMENTS = [
    "torch>=2.14,<2.15", "torchvision>=0.29,<0.30", "open_clip_torch>=3.3,<4", "mlflow>=3.17,<4",
    "numpy", "pandas", "pillow", "pyyaml", "pydantic>=2",
]
InvalidQuery = MlflowException  # what predict raises for bad input (HTTP 400 when served)
DEFAULT_TOP_K = 10  # the K of the headline metrics (p@10)
MAX_TOP_K = 1000
CATALOG_ARTIFACT = "catalog"
IMAGE_REF_SEPARATOR = "#"  # image reference: <processed dataset path or URI>#<item_id>


class Query(pydantic.BaseModel):
    """One query: a `text`, or an `image` as encoded bytes (base64 text in JSON). Never a file path."""

    model_config = pydantic.ConfigDict(extra="forbid")
    text: str | None = None
    image: bytes | None = None

    @pydantic.field_validator("image", mode="before")
    @classmethod
    def _decode_base64(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:  # MLflow's own examples wrap base64 lines, so whitespace is dropped first
                return base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("'image' must be the image's encoded bytes, as base64 text in JSON; "
                                 "a file path is never read") from None
        return value

    @pydantic.model_validator(mode="after")
    def _one_of_text_or_image(self) -> "Query":
        has_text, has_image = bool(self.text and self.text.strip()), bool(self.image)
        if has_text == has_image:
            raise ValueError("each row needs exactly one of a non-empty 'text' or an 'image'")
        return self


class Match(pydantic.BaseModel):
    item_id: str
    score: float
    category: str
    image: str  # <processed dataset>#<item_id>: catalog_image(ref) opens it
    url: str


class Answer(pydantic.BaseModel):
    embedding: list[float]
    matches: list[Match]


class ProtocolPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from protocol.model.backbone import BackboneSpec, check_fingerprint, create_backbone
        from protocol.model.protocol_model import ProtocolHeads, ProtocolModel
        from protocol.retrieval.catalog import load_catalog
        from protocol.training.checkpoint import load_checkpoint

        spec = read_json(context.artifacts["backbone_spec"])
        pretrained = context.artifacts.get("backbone_weights") or spec["pretrained"]
        backbone = create_backbone(BackboneSpec(model=spec["model"], pretrained=pretrained, seed=int(spec["seed"])))
        check_fingerprint(spec["fingerprint"], backbone.fingerprint, "backbone of the logged model")
        state = load_checkpoint(context.artifacts["heads"], expected_backbone_fingerprint=spec["fingerprint"])
        self.model = ProtocolModel(backbone, ProtocolHeads.from_checkpoint(state))
        self.catalog = None
        if CATALOG_ARTIFACT in context.artifacts:
            self.catalog = load_catalog(context.artifacts[CATALOG_ARTIFACT],
                                        expected_backbone_fingerprint=spec["fingerprint"])
            self.dataset_ref = (context.model_config or {}).get("dataset", "")
            # the catalog side of the ranking vectors, made once (late fusion extends it per item)
            self.catalog_vectors = self.model.heads.ranking_catalog(self.catalog.image)

    def predict(self, model_input: list[Query], params: dict[str, Any] | None = None) -> list[Answer]:
        top_k = self._top_k(params)
        texts = [i for i, q in enumerate(model_input) if q.text]
        images = [i for i, q in enumerate(model_input) if not q.text]
        embeddings = np.zeros((len(model_input), self.model.heads.config.out_dim), dtype=np.float32)
        if texts:
            embeddings[texts] = self.model.encode_text_numpy([model_input[i].text for i in texts])
        if images:
            embeddings[images] = self.model.encode_image_numpy([_decoded_image(model_input[i].image, i)
                                                                for i in images])
        matches = self._search(embeddings, [q.text or "" for q in model_input], top_k) if top_k else \
            [[] for _ in model_input]
        return [Answer(embedding=e.tolist(), matches=m) for e, m in zip(embeddings, matches)]

    def _top_k(self, params: dict[str, Any] | None) -> int:
        top_k = int((params or {}).get("top_k", DEFAULT_TOP_K if self.catalog is not None else 0))
        if not 0 <= top_k <= MAX_TOP_K:
            raise MlflowException.invalid_parameter_value(f"params.top_k must be in [0, {MAX_TOP_K}], got {top_k}")
        if top_k and self.catalog is None:
            raise MlflowException.invalid_parameter_value(
                "this model carries no catalog (an epoch checkpoint): serve a registered version "
                "(models:/fashion-retrieval-protocol@champion) to search, or pass top_k=0 for embeddings")
        return top_k

    def _search(self, embeddings: np.ndarray, texts: list[str], k: int) -> list[list[Match]]:
        """Top k of the catalog, ranked as evaluation ranks: text rows with the heads' attribute late fusion."""
        from protocol.retrieval.search import topk

        meta = self.catalog.meta
        queries = self.model.heads.ranking_queries(texts, embeddings)
        scores, rows = topk(queries, self.catalog_vectors, min(k, len(meta)), backend="auto", report={})
        ids, categories = meta["item_id"].astype(str).to_numpy(), meta["category2"].astype(str).to_numpy()
        urls = meta["url"].fillna("").astype(str).to_numpy() if "url" in meta else np.full(len(meta), "")
        return [[Match(item_id=ids[r], score=float(s), category=categories[r], url=urls[r],
                       image=f"{self.dataset_ref}{IMAGE_REF_SEPARATOR}{ids[r]}")
                 for s, r in zip(row_scores, row_ids) if r >= 0]
                for row_scores, row_ids in zip(scores, rows)]


def _decoded_image(data: bytes, row: int):
    from PIL import Image

    from protocol.data.images import load_image

    try:
        return load_image(data)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise MlflowException.invalid_parameter_value(
            f"row {row}: 'image' is not a decodable picture ({type(e).__name__}); send the encoded "
            f"bytes of a JPEG/PNG/WebP file (base64 in JSON)") from None


def catalog_image(ref: str):
    """The picture behind a served match's `image` reference (`<processed dataset>#<item_id>`)."""
    from protocol.data.images import load_image
    from protocol.data.processed import load_processed
    from protocol.tracking.artifact_cache import resolve_input

    dataset, sep, item_id = ref.rpartition(IMAGE_REF_SEPARATOR)
    if not sep or not dataset or not item_id:
        raise ValueError(f"not an image reference (<processed dataset>#<item_id>): {ref!r}")
    processed = load_processed(resolve_input(dataset, "image reference"))
    rows = np.flatnonzero(processed.meta["item_id"].to_numpy() == item_id)
    if len(rows) == 0:
        raise LookupError(f"{dataset} has no item {item_id!r}")
    return load_image(processed.dataset[int(rows[0])]["image"])


def input_example(image: bytes) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A text row and an image row (a catalog picture), searched for the top DEFAULT_TOP_K."""
    return [{"text": "a red denim jacket with long sleeves"}, {"image": image}], {"top_k": DEFAULT_TOP_K}


def _model_artifacts(work: Path, heads: str | Path, backbone_spec: dict, catalog_dir: str | Path | None) -> dict:
    artifacts = {"heads": str(heads), "backbone_spec": str(write_json(work / "backbone_spec.json", backbone_spec))}
    weights = Path(str(backbone_spec["pretrained"]))
    if weights.is_file():  # a local weights file travels with the model
        artifacts["backbone_weights"] = str(weights)
    if catalog_dir is not None:
        artifacts[CATALOG_ARTIFACT] = str(catalog_dir)
    return artifacts


def log_heads_model(heads: str | Path, backbone_spec: dict, *, name: str, step: int = 0,
                    metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> str:
    """Log heads as a LoggedModel output of the active run at `step`; returns its model id.

    Cheap enough for every epoch: no catalog, no input example (which would load the
    backbone), pip requirements given (no inference). `metrics` (that step's validation
    figures) are linked to the model by model_id. Not `mlflow.pyfunc.log_model`: it fetches
    the history of every metric of the run, one request each, to find those at `step`
    (80 s per model on a tracking server for a train run's metrics).
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    run_id = mlflow.active_run().info.run_id
    model = mlflow.initialize_logged_model(name=name, source_run_id=run_id, tags=tags, model_type="protocol-heads")
    try:
        _save_into_logged_model(model.model_id, heads, backbone_spec)
        MlflowClient().log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
        if metrics:
            mlflow.log_metrics(metrics, step=step, model_id=model.model_id, synchronous=True)
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    # READY last: a model a killed run leaves READY has its files, its run link and its metrics
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def _save_into_logged_model(model_id: str, heads: str | Path, backbone_spec: dict, catalog_dir: str | Path | None = None,
                            **save_kwargs) -> None:
    """Save the pyfunc model into logged model `model_id`'s own artifact location."""
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    logged = client.get_logged_model(model_id)
    work = Path(tempfile.mkdtemp(prefix="protocol-model-"))
    try:
        local = work / "model"
        mlflow.pyfunc.save_model(
            local, python_model=ProtocolPyfuncModel(),
            artifacts=_model_artifacts(work, heads, backbone_spec, catalog_dir),
            code_paths=[str(PACKAGE_DIR)], pip_requirements=PIP_REQUIREMENTS,
            mlflow_model=Model(artifact_path=logged.artifact_location, run_id=logged.source_run_id,
                               model_uuid=model_id, model_id=model_id), **save_kwargs)
        for pycache in local.rglob("__pycache__"):
            shutil.rmtree(pycache, ignore_errors=True)
        client.log_model_artifacts(model_id, str(local))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register_logged_model(model_id: str, heads: str | Path, backbone_spec: dict, *, catalog_dir: str | Path,
                          dataset_ref: str, example_image: bytes, alias: str, registered_model: str,
                          description: str = "", version_tags: dict | None = None) -> str:
    """Pack the catalog and an input example into logged model `model_id`, register it, point `alias` at it.

    The model is saved again in full (the same heads, plus the catalog, the input example and
    the search parameter in its signature) into the logged model's own artifact location, so
    the registered version *is* that logged model: `search_logged_models` finds it, its
    linked metrics stay. Saving runs `predict` on the example once (a serving check).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    _save_into_logged_model(model_id, heads, backbone_spec, catalog_dir,
                            input_example=input_example(example_image), model_config={"dataset": dataset_ref})
    version = str(mlflow.register_model(f"models:/{model_id}", registered_model).version)
    client.set_registered_model_alias(registered_model, alias, version)
    if description:
        client.update_model_version(registered_model, version, description=description)
    for key, value in (version_tags or {}).items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    log.info("registered logged model %s as %s version %s (@%s)", model_id, registered_model, version, alias)
    return version


def logged_model_id(version) -> str:
    """The LoggedModel behind a registered version (a sqlite registry keeps it only in `source`)."""
    model_id = getattr(version, "model_id", None) or version.source.removeprefix("models:/")
    if not model_id.startswith("m-"):
        raise LookupError(f"version {version.version} of {version.name!r} was not registered from a logged model "
                          f"(source {version.source})")
    return model_id


def log_protocol_model(heads: str | Path, backbone_spec: dict, *, name: str, catalog_dir: str | Path,
                       dataset_ref: str, example_image: bytes, alias: str, registered_model: str,
                       description: str = "", version_tags: dict | None = None) -> str:
    """Log heads as a model of the active run and register it with its catalog (baseline: one model, no epochs)."""
    model_id = log_heads_model(heads, backbone_spec, name=name)
    return register_logged_model(model_id, heads, backbone_spec, catalog_dir=catalog_dir, dataset_ref=dataset_ref,
                                 example_image=example_image, alias=alias, registered_model=registered_model,
                                 description=description, version_tags=version_tags)


def encoded_image(image) -> bytes:
    """PNG bytes of a datasets Image cell or PIL image (for the input example)."""
    from protocol.data.images import load_image

    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return buffer.getvalue()
