# Run after linking _cuda: concatenates the per-object ptxas reports in LOG_DIR into OUT (next to the
# module) so that a test can check the spill counts of the module it imports.
file(GLOB logs "${LOG_DIR}/*.o.ptxas.log")
list(SORT logs)
set(text "# ptxas -v report of every object in bertrt._cuda (written by csrc/cuda/collect_ptxas_logs.cmake)\n")
foreach(log IN LISTS logs)
  get_filename_component(name "${log}" NAME)
  file(READ "${log}" body)
  string(APPEND text "## ${name}\n${body}\n")
endforeach()
file(WRITE "${OUT}" "${text}")
