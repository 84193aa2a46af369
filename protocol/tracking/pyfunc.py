"""The served model: a custom `mlflow.pyfunc.PythonModel` (backbone + heads).

`mlflow.pytorch.log_model` would export a torch program without tokenisation or
preprocessing, so the logged model carries the backbone *spec* (name, weights
source, seed, fingerprint) and the head weights as artifacts, and rebuilds the
backbone through the one factory when loaded. Input: a DataFrame (or dict) with a
`text` column or an `image` column (bytes, a file path, or base64 text); output:
one L2-normalised embedding per row.
"""

from __future__ import annotations

import base64
import binascii
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from protocol.io import read_json, write_json

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PIP_REQUIREMENTS = [
    "torch>=2.14,<2.15", "torchvision>=0.29,<0.30", "open_clip_torch>=3.3,<4", "mlflow>=3.17,<4",
    "numpy", "pandas", "pillow", "pyyaml",
]


def image_cell(value: Any) -> Any:
    """An image cell as the model takes it: bytes, PIL or a file path pass through; base64 text is decoded."""
    if isinstance(value, str) and not (len(value) < 4096 and Path(value).is_file()):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image cell is neither an existing file path nor base64 bytes: {value[:60]!r}") from e
    return value


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    raise ValueError("input must be a DataFrame (or JSON object) with a 'text' or an 'image' column")


class ProtocolPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from protocol.model.backbone import BackboneSpec, check_fingerprint, create_backbone
        from protocol.model.protocol_model import ProtocolHeads, ProtocolModel
        from protocol.training.checkpoint import load_checkpoint

        spec = read_json(context.artifacts["backbone_spec"])
        pretrained = context.artifacts.get("backbone_weights") or spec["pretrained"]
        backbone = create_backbone(BackboneSpec(model=spec["model"], pretrained=pretrained, seed=int(spec["seed"])))
        check_fingerprint(spec["fingerprint"], backbone.fingerprint, "backbone of the logged model")
        state = load_checkpoint(context.artifacts["heads"], expected_backbone_fingerprint=spec["fingerprint"])
        self.model = ProtocolModel(backbone, ProtocolHeads.from_checkpoint(state))

    def predict(self, context, model_input, params=None):
        frame = _as_frame(model_input)
        if "text" not in frame.columns and "image" not in frame.columns:
            raise ValueError(f"input needs a 'text' or an 'image' column, got columns {list(frame.columns)}")
        out = np.zeros((len(frame), self.model.heads.config.out_dim), dtype=np.float32)
        texts = frame["text"] if "text" in frame.columns else pd.Series([None] * len(frame))
        is_text = texts.notna().to_numpy() & (texts.astype(str).str.len() > 0).to_numpy()
        if is_text.any():
            out[is_text] = self.model.encode_text_numpy(texts[is_text].astype(str).tolist())
        if (~is_text).any():
            if "image" not in frame.columns:
                raise ValueError("rows without text need an 'image' cell")
            images = [image_cell(v) for v in frame["image"][~is_text]]
            out[~is_text] = self.model.encode_image_numpy(images)
        return out


def log_protocol_model(heads_checkpoint: str | Path, backbone_spec: dict, *, alias: str,
                       registered_model: str, description: str = "", version_tags: dict | None = None) -> str:
    """Log the pyfunc model in the active run, register it and point `alias` at the new version."""
    from mlflow.tracking import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="protocol-model-"))
    try:
        spec_path = write_json(tmp / "backbone_spec.json", backbone_spec)
        artifacts = {"heads": str(heads_checkpoint), "backbone_spec": str(spec_path)}
        weights = Path(str(backbone_spec["pretrained"]))
        if weights.is_file():  # a local weights file travels with the model
            artifacts["backbone_weights"] = str(weights)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ProtocolPyfuncModel(),
            artifacts=artifacts,
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(registered_model, alias, version)
    if description:
        client.update_model_version(registered_model, version, description=description)
    for key, value in (version_tags or {}).items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    log.info("registered %s version %s as @%s", registered_model, version, alias)
    return version
