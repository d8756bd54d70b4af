from tests.verify.fixtures import (  # noqa: F401
    fp16_onnx,
    good_onnx,
    good_proto,
    pathway_ckpt,
    pathway_ckpt_path,
    static_onnx,
    verify_dir,
)
