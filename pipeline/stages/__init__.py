"""One module per doit stage of a build: download, preprocess, train, convert, convert_onnx,
evaluate, curves, analysis, layers, card. Each has pure functions, a `run()` the task calls
and a thin `main()`."""
