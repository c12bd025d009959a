"""The model card and what training and the service share through it: the card's schema and
parser, the NumPy forward propagation (the oracle), and the tables of names and datatypes.

NumPy and jsonschema only: imported by `training` and `service`, importing neither.
"""
