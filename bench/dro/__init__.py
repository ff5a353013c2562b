"""Independent digital reference objects and the chain that scores the product on them.

* :mod:`bench.dro.harness`: storescu → ``pacsnode serve`` → Orthanc, results read back
  from Orthanc (Parametric Maps, SR texts).
* :mod:`bench.dro.scoring`: per-patch scores with the OSIPI tolerances.
* :mod:`bench.dro.dicomwrite`: classic MR series writer (shares no code with the
  product's phantoms).
* :mod:`bench.dro.dce_object`: the DCE reference object.
* :mod:`bench.dro.dsc_object`: the DSC reference object.
"""
