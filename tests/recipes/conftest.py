from tests.eval.conftest import world32  # noqa: F401  (the same small world)
