"""Deployment of the dualflower app on SuperLink + SuperNodes: TLS material, the exact
commands of every component, the generated docker-compose files and the ``dualflower-deploy``
command line.
"""
