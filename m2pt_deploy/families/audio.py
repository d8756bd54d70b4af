"""AudioMAE: a timm ViT on 1-channel fbank spectrograms, read by the ``vit`` family.

Everything the weights do not say about AudioMAE lives here: its input (time x frequency,
1024 x 128 for AudioSet), its normalisation by dataset, how a 512-patch grid is told from its
transpose, and the name its exported input takes. The ``vit`` family asks these functions, and
the training ``args`` name the datasets, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from m2pt_deploy.errors import M2ptError

__all__ = ["AUDIO_DATASETS", "AUDIO_INPUT_NAME", "AUDIO_MEL_BINS", "audio_grid", "audio_normalisation",
           "audio_spec_input", "is_audio_input", "is_spectrogram"]

# AudioMAE (and M2PT's Audio code): fbank spectrograms of 128 mel bins, time × frequency,
# normalised as (x - mean) / (2 * std) with per-dataset statistics; audioset is the default.
AUDIO_DATASETS: dict[str, tuple[int, float, float]] = {  # name: (frames, mean, std)
    "audioset": (1024, -4.2677393, 4.5689974),
    "k400": (1024, -4.2677393, 4.5689974),
    "esc50": (512, -6.6268077, 5.358466),
    "speechcommands": (128, -6.845978, 5.5654526),
}
AUDIO_MEL_BINS = 16 * 8
# Hugging Face's audio models (AST, ``ASTForAudioClassification``, whose input is the same fbank,
# time x frequency) name their input this; clients written for them feed an export unchanged.
AUDIO_INPUT_NAME = "input_values"
_PATCH, _PATCHES = 16, 512


def audio_spec_input(dataset: str = "audioset") -> tuple[tuple[int, int, int], tuple[float], tuple[float]]:
    """AudioMAE's input (1, frames, 128) and its normalisation (mean, 2 × std) for a dataset."""
    frames, mean, std = AUDIO_DATASETS[dataset]
    return (1, frames, AUDIO_MEL_BINS), (mean,), (2 * std,)


def _is_audiomae_grid(chans: int, patch: int, num_patches: int) -> bool:
    return chans == 1 and patch == _PATCH and num_patches == _PATCHES


def audio_grid(chans: int, patch: int, num_patches: int, input_size: Sequence[int] | None,
               notes: list[str]) -> tuple[int, int] | None:
    """AudioMAE's input height and width for a ViT's patch grid, or ``None`` when the grid is not
    AudioMAE's or the user's ``input_size`` (C H W) decides it; its transpose is refused."""
    if not _is_audiomae_grid(chans, patch, num_patches):
        return None
    if input_size is not None:
        h, w = input_size[1], input_size[2]
        if (h // patch, w // patch) == (8, 64):
            raise M2ptError(
                f"--input-size 1 {h} {w} is AudioMAE's input transposed: it is time x frequency, "
                "(1, 1024, 128); the same 512 patches would meet a transposed position table"
            )
        return None
    # NOTE a 512-patch grid is 64 × 8 (AudioMAE) or 8 × 64 (its transpose): both load,
    # only one is right, and 1-channel 512-patch ViTs are AudioMAE's.
    notes.append("assumed AudioMAE's input: 1 x 1024 x 128 (time x frequency), normalised as "
                 "(x + 4.2677) / (2 x 4.5690); pass --input-size to override")
    return 1024, AUDIO_MEL_BINS


def is_audio_input(chans: int, patch: int, num_patches: int, height: int, width: int) -> bool:
    """A ViT whose weights and input are AudioMAE's (AudioSet's 1024 x 128 spectrogram)."""
    return _is_audiomae_grid(chans, patch, num_patches) and (height, width) == (1024, AUDIO_MEL_BINS)


def audio_normalisation(notes: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """AudioSet's normalisation, which nothing in the file states, with the note that says so."""
    _, mean, std = audio_spec_input()
    notes.append("AudioMAE's AudioSet normalisation assumed: (x + 4.2677) / (2 x 4.5690), not in the weights")
    return mean, std


def is_spectrogram(input_size: Sequence[int]) -> bool:
    """An input of AudioMAE's AudioSet shape (1, 1024, 128): served and named as audio."""
    return tuple(input_size) == audio_spec_input()[0]
