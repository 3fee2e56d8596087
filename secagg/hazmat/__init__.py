"""Hazardous cryptographic building blocks.

.. warning::
   These primitives are easy to misuse: keys, labels and associated data must be chosen as the
   protocols in :mod:`secagg.protocols` choose them. Use the recipes in :mod:`secagg` instead unless
   you are implementing a protocol.
"""
