"""The names a config chooses from, kept free of torch so that configs (the YAML files and
flags of every ``tell`` command) are validated without importing it: a refused command
answers in a fraction of a second instead of after torch's ~2 s import.

Each tuple's owner (the module that builds what the name selects) imports it from here.
"""

ENCODERS = ("identity", "mlp", "conv")  # tell.encoders
INITS = ("k-means++", "random")  # tell.init
OPTIMIZERS = ("adam", "adadelta", "sgd")  # tell.optim
