//! UNet2DConditionModel: resnets, cross-attention transformers, down/mid/up blocks.
