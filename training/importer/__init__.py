"""Import a model file as the next version of a model: python -m training import MODEL_FILE --name NAME.

One module a step: `cli` (arguments, exit codes) hands the file to `run`, which reads it with
`formats` (`keras_file`, `savedmodel`, `onnx_file`, each giving a `loaded.Loaded`: the signature
and the call that runs the model), draws or reads the inputs to compare on (`samples`), exports
Keras models and SavedModels through training.export.to_onnx (`conversion`), holds onnxruntime
to the model (`parity`), writes a forward section for plain Dense stacks (`forward_section`),
and publishes the version with its card (training/card.py), atomically (training/repository.py).

TensorFlow is loaded only for Keras files and SavedModels.
"""
