"""AudioMAE's input: what the ``vit`` family assumes for a 1-channel spectrogram ViT and what
the training ``args`` name by dataset (both read it here, so neither imports the other)."""

from __future__ import annotations

__all__ = ["AUDIO_DATASETS", "AUDIO_MEL_BINS", "audio_spec_input"]

# AudioMAE (and M2PT's Audio code): fbank spectrograms of 128 mel bins, time × frequency,
# normalised as (x - mean) / (2 * std) with per-dataset statistics; audioset is the default.
AUDIO_DATASETS: dict[str, tuple[int, float, float]] = {  # name: (frames, mean, std)
    "audioset": (1024, -4.2677393, 4.5689974),
    "k400": (1024, -4.2677393, 4.5689974),
    "esc50": (512, -6.6268077, 5.358466),
    "speechcommands": (128, -6.845978, 5.5654526),
}
AUDIO_MEL_BINS = 16 * 8


def audio_spec_input(dataset: str = "audioset") -> tuple[tuple[int, int, int], tuple[float], tuple[float]]:
    """AudioMAE's input (1, frames, 128) and its normalisation (mean, 2 × std) for a dataset."""
    frames, mean, std = AUDIO_DATASETS[dataset]
    return (1, frames, AUDIO_MEL_BINS), (mean,), (2 * std,)
