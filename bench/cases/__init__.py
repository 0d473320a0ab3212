"""The benchmark cases, one module each; every module has ``build(options) -> list[Case]``."""
