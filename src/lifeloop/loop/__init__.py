"""Import paths of lifeloop 0.1 kept for one release: the router and feedback `model.py`
shells that `lifeloop router init` copied into existing repositories import these. Running
`lifeloop router init` again rewrites the shells to import from lifeloop.serve."""
