"""Encoders, registered in mmdialog.registry.ENCODERS on import.

An encoder maps a batch of one modality to tokens (N, num_tokens, dim) and exposes both sizes as
attributes: the processor expands each placeholder to the fusion's share of num_tokens, the fusion
projects from dim. forward_levels(x, levels) gives (N, L, num_tokens, dim) at chosen depths (level 0 the
embedding, -1 the output) for the hierarchical and dynamic fusions. The processor reads each modality's
input size from the encoder: image_size (image); sample_rate, num_samples (audio); num_frames, image_size (video).
vit, audio_transformer, video_frames and video_tubelet are one skeleton (encoders/common.py TransformerEncoder:
positions, blocks, norm, levels), each with its own stem (patches, log-mel + convolutions, frames, tubelets).

    text:  bert, hf_text                      (N, L) ids -> (N, L, dim); used on their own, not by MultimodalLM
    image: vit, resnet, hf_vision             (N, 3, S, S) in [-1, 1]
    audio: audio_cnn, audio_transformer, hf_whisper   (N, samples) waveforms
    video: video_frames, video_tubelet        (N, F, 3, S, S)
"""

from mmdialog.encoders.audio import AudioCNNEncoder, AudioTransformerEncoder, LogMel
from mmdialog.encoders.hf import HFTextEncoder, HFVisionEncoder, WhisperEncoderAdapter
from mmdialog.encoders.image import ResNetEncoder, ViTEncoder
from mmdialog.encoders.text import BertEncoder, mean_pool
from mmdialog.encoders.video import FrameTemporalEncoder, TubeletEncoder

__all__ = ["AudioCNNEncoder", "AudioTransformerEncoder", "BertEncoder", "FrameTemporalEncoder", "HFTextEncoder",
           "HFVisionEncoder", "LogMel", "ResNetEncoder", "TubeletEncoder", "ViTEncoder", "WhisperEncoderAdapter",
           "mean_pool"]
