"""The programs that run inside the python_tests sandboxes (prefopt.oracles.sandbox): they are
copied into each sandbox and run there with the standard library only, so they import nothing of
prefopt. `wire` is the data both sides exchange; `solution` runs a completion's code and answers
calls; `harness` runs the tests against it."""
