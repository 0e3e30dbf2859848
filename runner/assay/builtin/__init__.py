"""Built-in handlers: evaluate a torchvision detection or classification model from a weights file,
with no handler code. model.yaml names the builder in a ``torchvision:`` section instead of
``run.handler``::

    name: maskrcnn-pennfudan
    torchvision:
      architecture: maskrcnn_resnet50_fpn   # an allow-listed torchvision builder
      num_classes: 2
      weights: maskrcnn.pt                  # a state dict beside model.yaml, or a torchvision weights name
      input: {min_size: 800, max_size: 1333}
      label_map: {1: 1}                     # model class -> dataset category id (others are dropped)

- ``spec``: parse and validate that section, resolve it at build time (weights downloaded into the
  package), and check it against the dataset at run start;
- ``models``: the allow-list of builders, weights names, reading and checking state dicts;
- ``handlers``: the ``Handler`` classes the runner loads for a built-in package.
"""

#: The package member that holds the resolved built-in config (the handler reads it at load).
CONFIG_FILE = "assay-builtin.json"
