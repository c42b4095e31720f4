"""The command layer: the `macaroon` console script and the whole-experiment commands.

Entry points only: they parse options and call the stage packages (`imagination`,
`trainers`, `evaluation`) and `pipeline`. Nothing imports this package.
"""
