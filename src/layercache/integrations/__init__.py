"""Framework integrations (``layercache.integrations.<name>``); each needs its extra installed."""
