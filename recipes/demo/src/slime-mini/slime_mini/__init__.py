"""A miniature of slime: glue between the rollout engine and the trainer."""

__version__ = "0.2.2"


def describe():
    import int4qat
    import megatron_mini
    import sglang_mini
    import six

    return {
        "slime": __version__,
        "sglang": sglang_mini.__version__,
        "sglang_features": sglang_mini.features(),
        "megatron": megatron_mini.__version__,
        "int4qat": int4qat.__version__,
        "six": six.__version__,
    }


def main():
    import json

    print(json.dumps(describe(), sort_keys=True))
