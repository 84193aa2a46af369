"""What one training step computes from its plan: the loss terms and their parts.

Anchor texts and images go through the heads with gradients; the extra columns (partners,
then negatives) are catalog lookups without gradients, from the embedding bank or embedded
afresh in eval mode, except their images with `image_gradients` (the default), which go through
the image head with gradients. Same-category columns compatible with an anchor are left out of
its softmax (`StepPlan.neutral`). Terms: the symmetric graded InfoNCE (text -> [anchors | extra items]
images; image -> anchor texts, or [anchors | extra items] texts with image_to_text_negatives), the
attribute cross-entropy on the anchor images, and the t2f term that learns the fusion weight
(candidates: the batch items and the partners, fused; each query's own item left out).
"""

from __future__ import annotations

import torch

from protocol.model.losses import attribute_loss, combined_loss, contrastive_loss, fusion_loss
from protocol.model.protocol_model import ProtocolHeads
from protocol.training.batches import EmbeddingBank, StepPlan
from protocol.training.data import TrainingData
from protocol.training.reporting import StepRecord


class StepLoss:
    def __init__(self, data: TrainingData, bank: EmbeddingBank | None, *, head_weights: dict[str, float],
                 weights: tuple[float, float, float], image_gradients: bool = True):
        self.data, self.bank, self.head_weights = data, bank, head_weights
        self.weights = weights  # (w_contrastive, w_attribute, w_fusion)
        # extra columns' images through the image head with gradients, so graded pairs and mined
        # confusers train the image side too (their texts stay lookups: text -> image is what ranks)
        self.image_gradients = image_gradients

    def __call__(self, heads: ProtocolHeads, plan: StepPlan) -> tuple[torch.Tensor, StepRecord]:
        data, a = self.data, plan.anchors
        image_emb, attr_logits = heads.forward_image(data.image.index_select(0, a))
        text_emb = heads.forward_text(data.text.index_select(0, a))
        extra_image, extra_text = self.extra_embeddings(heads, plan)  # partners first

        contrastive, parts = contrastive_loss(text_emb, image_emb, heads.scale(), plan.targets, plan.i2t_targets,
                                              extra_image, extra_text if plan.i2t_extra else None,
                                              t2i_exclude=plan.neutral, i2t_exclude=plan.i2t_neutral)
        parts["contrastive"] = contrastive.detach()
        attribute, accuracy = None, ()
        if attr_logits:
            attribute, attr_parts = attribute_loss(attr_logits, plan.labels, self.head_weights,
                                                   known_counts=plan.known, accuracy=False)
            parts.update(attr_parts, attribute=attribute.detach())
            # acc.<head> parts: from these logits, in numpy, once per epoch (or when logged).
            accuracy = tuple((name, logits.detach(), plan.label_arrays[name])
                             for name, logits in attr_logits.items() if plan.known[name])
        fusion = None
        if plan.fusion is not None:  # the planner makes t2f targets when the term is on and there are partners
            # Candidates: the batch items and the partners, fused; each query's own item is left out.
            n = plan.n_partners
            fusion = fusion_loss(
                text_emb, torch.cat([image_emb, extra_image[:n]]), torch.cat([text_emb, extra_text[:n]]),
                heads.fusion(), heads.scale(), plan.fusion, plan.fusion_exclude,
            )
            parts["fusion"] = fusion.detach()
        w_contrastive, w_attribute, w_fusion = self.weights
        loss = combined_loss(contrastive, attribute, fusion, w_contrastive=w_contrastive,
                             w_attribute=w_attribute, w_fusion=w_fusion)
        parts["loss"] = loss.detach()
        return loss, StepRecord(tuple(parts), torch.stack(list(parts.values())), accuracy)

    def extra_embeddings(self, heads: ProtocolHeads, plan: StepPlan):
        """Image and text embeddings of the extra columns. Texts: no gradient, no dropout, like a catalog.
        Images: the same, or through the image head with gradients when `image_gradients`."""
        if not len(plan.extra_rows):
            return None, None
        if self.bank is not None:
            image, text = self.bank.take(plan.bank_extra)
        else:
            heads.eval()
            with torch.no_grad():
                image = None if self.image_gradients else heads.image_head(self.data.image[plan.extra_rows])
                text = heads.forward_text(self.data.text[plan.extra_rows])
            heads.train()
        if self.image_gradients:
            image = heads.image_head(self.data.image.index_select(0, plan.extra_rows))
        return image, text
