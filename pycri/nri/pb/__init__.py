"""Generated protobuf modules for NRI's api.proto and ttrpc's envelope.

Do not edit them: change proto/nri/*.proto and run ``python tools/gen_nri_api.py``.
"""
