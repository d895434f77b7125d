"""Data: the Dataset artifact (:mod:`.dataset`), where data comes from (:mod:`.sources`), the file
formats read (:mod:`.readers`) and class index files (:mod:`.classes`)."""
