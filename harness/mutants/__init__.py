"""Mutants: planted product bugs the suites must catch (issue 14, item 1).

- :mod:`.catalog`: the catalog (``lab/mutants/mutants.yaml``) and its parser.
- :mod:`.qualify`: build each mutant, run the tests that must catch it and
  the unmutated build on the same tests, and judge (``xenhil qualify``).
"""
