"""A minimal Django project whose cache is layercache's ``LayerCacheBackend``."""
