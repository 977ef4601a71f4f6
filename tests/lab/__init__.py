"""The shared helpers of the system tests (tests/*/test_*.py), of tests/bench/bench.py
and of tests/run's preflight. pytest puts tests/ on sys.path (tests/pytest.ini), and
tests/bench/run sets PYTHONPATH, so everything imports these as `lab.<module>`:

  binaries    where the workspace's release binaries are (LB_BIN_DIR), and binary()
  programs    the external programs the tests run: name -> absolute path -> Debian package
  preflight   checks that table against this machine (`python3 -m lab.preflight`)
  wait        wait_for() and wait_listening()
  netns       test hosts in network namespaces on a bridge (Lab, Host, connect_from)
  scan        TCP and UDP port scans from a test host
  peers       starting the peers of tests/peers/ and dcmtk's storescp in a test host
  lbcore      lbcore run in a test host and driven with lbctl
  webapi      a client of lbweb's HTTPS JSON API, from inside a test host
  pid1        init run as PID 1 of fresh namespaces (tests/init)
  vm          the appliance image under QEMU: qemu/run, the serial console, disks
  update      update archives, disk copies read from outside, the agent on the host
  dicom_files small but real DICOM files, and their data sets compared
"""
