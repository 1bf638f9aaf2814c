"""The REST server and the offline predictor, in one place.

HTTP side: rest_api.py (TF Serving's paths, statuses and JSON errors; connection guards).
Model side: models.py (versions on disk, loaded SavedModels, their signatures),
json_tensors.py (request JSON -> tensors -> response JSON), batching.py (requests merged into
one model call), image_headers.py (image sizes read from headers, before any decoding).
Commands: mnist_cnn/serve.py (the server) and mnist_cnn/predict.py (image files, no server).
"""
