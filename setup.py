"""mnist-cnn: AlexNet and ResNet on MNIST in TF1 style (graphs, placeholders, tf.estimator)."""

import os

import setuptools

TENSORFLOW_VERSION = '2.15.1'
# CPU wheels by default; MNIST_CNN_GPU=1 at install time takes the CUDA build instead (the two
# packages install the same `tensorflow` module and must not be mixed).
if os.environ.get('MNIST_CNN_GPU') == '1':
  TENSORFLOW_REQUIREMENT = 'tensorflow[and-cuda]==%s' % TENSORFLOW_VERSION
else:
  TENSORFLOW_REQUIREMENT = 'tensorflow-cpu==%s' % TENSORFLOW_VERSION

setuptools.setup(
    name='mnist-cnn',
    version='0.1.0',
    description='Reference reproduction of AlexNet and ResNet trained on MNIST with '
                'TensorFlow 1-style graphs, placeholders and tf.estimator.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['official', 'official.*', 'mnist_cnn',
                                               'mnist_cnn.*']),
    # The time-to-accuracy configurations (absl flag files, --flagfile=...).
    package_data={'mnist_cnn': ['configs/*.flags']},
    # TensorFlow 2.16 removed tf.estimator, and TensorFlow 2.15 supports Python 3.9-3.11.
    python_requires='>=3.9,<3.12',
    install_requires=[
        TENSORFLOW_REQUIREMENT,
        'tensorflow-estimator==2.15.0',
        'tensorflow-datasets==4.9.3',
        'tensorflow-metadata>=1.13,<1.16',  # newer ones need protobuf 5, TF 2.15 has 4.
        'absl-py>=1.0,<3',
        'numpy>=1.23,<2',
        'matplotlib>=3.7,<3.10',  # the report's plots (headless Agg backend)
        'aiohttp>=3.9,<4',  # the REST model server
        'orjson>=3.9,<4',  # its JSON parsing
    ],
    extras_require={
        # For installs from an index; from a checkout prefer MNIST_CNN_GPU=1 (see README).
        'gpu': ['tensorflow[and-cuda]==%s' % TENSORFLOW_VERSION],
        # pytest-xdist: the suite runs on two workers (pytest.ini): 8.5 min in CI instead of 13.5.
        'test': ['pytest>=7,<10', 'pytest-xdist>=3.2,<4'],
    },
    classifiers=[
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
    ],
)
