"""mnist-cnn: AlexNet, GoogLeNet and ResNet on MNIST and CIFAR-10 in TF1 style (graphs,
placeholders, tf.estimator), reproducing a student report and serving the results."""

import os

import setuptools

VERSION = '0.4.0'
TENSORFLOW_VERSION = '2.15.1'
# CPU wheels by default; MNIST_CNN_GPU=1 at install time takes the CUDA build instead (the two
# packages install the same `tensorflow` module and must not be mixed).
if os.environ.get('MNIST_CNN_GPU') == '1':
  TENSORFLOW_REQUIREMENT = 'tensorflow[and-cuda]==%s' % TENSORFLOW_VERSION
else:
  TENSORFLOW_REQUIREMENT = 'tensorflow-cpu==%s' % TENSORFLOW_VERSION

# One console command per `python -m` command users run (docs/training.md and the others say
# which is which); `python -m` keeps working.
COMMANDS = {
    'mnist-cnn-alexnet': 'mnist_cnn.alexnet_main',
    'mnist-cnn-resnet': 'mnist_cnn.resnet_main',
    'mnist-cnn-googlenet': 'mnist_cnn.googlenet_main',
    'mnist-cnn-cifar10': 'official.resnet.cifar10_main',
    'mnist-cnn-serve': 'mnist_cnn.serve',
    'mnist-cnn-predict': 'mnist_cnn.predict',
    'mnist-cnn-report': 'mnist_cnn.report',
    'mnist-cnn-cluster': 'mnist_cnn.launch_local_cluster',
}

setuptools.setup(
    name='mnist-cnn',
    version=VERSION,
    description='AlexNet, GoogLeNet and ResNet on MNIST and CIFAR-10 in TensorFlow 1 style '
                '(graphs, placeholders, tf.estimator): a reference reproduction of a student '
                'report, with the Model Garden r1 API, exports and a TF Serving-compatible '
                'gRPC and REST server.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=setuptools.find_packages(include=['official', 'official.*', 'mnist_cnn',
                                               'mnist_cnn.*']),
    # The time-to-accuracy configurations (absl flag files, --flagfile=...).
    package_data={'mnist_cnn': ['configs/*.flags']},
    entry_points={'console_scripts': ['%s = %s:run_command' % (name, module)
                                      for name, module in COMMANDS.items()]},
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
        # For installs from an index; from a checkout prefer MNIST_CNN_GPU=1 (docs/installing.md).
        'gpu': ['tensorflow[and-cuda]==%s' % TENSORFLOW_VERSION],
        # pytest-xdist: the suite runs on two workers (pytest.ini).
        'test': ['pytest>=7,<10', 'pytest-xdist>=3.2,<4'],
    },
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
    ],
)
