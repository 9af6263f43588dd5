"""The prediction, feedback and history store, its spool for outages, and kept inputs."""

from lifeloop.errors import FeedbackError, StoreError
from lifeloop.store import blobs, journal
from lifeloop.store.database import Store, default_store_url

__all__ = ["FeedbackError", "Store", "StoreError", "blobs", "default_store_url", "journal"]
