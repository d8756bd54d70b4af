"""Where every input the pipeline feeds a model comes from, below both training and export.

- :mod:`~m2pt_deploy.inputs.preprocess`: timm's image transforms and the ``.npz`` array transform.
- :mod:`~m2pt_deploy.inputs.datasets`: labelled training and evaluation data (``m2pt-train --data``).
- :mod:`~m2pt_deploy.inputs.user`: the user's unlabelled inputs (``--calib-data``) in the family's layout.
- :mod:`~m2pt_deploy.inputs.photos`: the photo tiles RGB image models calibrate and verify on.
- :mod:`~m2pt_deploy.inputs.seeded`: seeded random inputs for the exact checks.
- :mod:`~m2pt_deploy.inputs.calibration`: which of those calibrate a reduced-precision model and which verify it.
- :mod:`~m2pt_deploy.inputs.learnable`: small labelled tasks per family, made from data that ships in
  installed packages, so that every family has a trained model to measure int8 on.

Seeds live in :mod:`m2pt_deploy.vocabulary` (``CALIBRATION_SEED``, ``VERIFY_SEED``): calibration
and held-out sets never share an input.
"""
