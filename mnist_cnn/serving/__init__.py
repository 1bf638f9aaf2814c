"""The gRPC and REST servers and the offline predictor, in one place.

gRPC side: grpc_api.py (TF Serving's PredictionService and ModelService), tfs_protos.py (its
messages, from a table of their fields), proto_tensors.py (TensorProto <-> arrays, limits
first). HTTP side: rest_api.py (TF Serving's paths, statuses and JSON errors; connection
guards), json_tensors.py (request JSON -> tensors -> response JSON). Models: model_config.py
(which models, version policies and labels), served_models.py (them by name, for both APIs),
models.py (versions on disk, loaded SavedModels, their signatures), batching.py (requests
merged into one model call), image_headers.py (image sizes read from headers, before any
decoding). Commands: mnist_cnn/serve.py (the server) and mnist_cnn/predict.py (image files, no
server).
"""
