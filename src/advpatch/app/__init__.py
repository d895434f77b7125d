"""The application layer: everything that drives Kubeflow Pipelines.

The command line (:mod:`~advpatch.app.cli`), the local runner (:mod:`~advpatch.app.local`),
compiling with a cluster placement (:mod:`~advpatch.app.compiler`, :mod:`~advpatch.app.placement`),
submitting to a KFP API (:mod:`~advpatch.app.submit`) and the code generator
(:mod:`~advpatch.app.codegen`). The core library under ``advpatch`` never imports this package
or KFP (a test checks); ``advpatch.components`` and ``advpatch.pipelines`` sit between the two.
"""
