-- Argo CD resource health check for assay.dev/EvaluationJob (resource.customizations.health.assay.dev_EvaluationJob).
-- Healthy: Ready=True (the job succeeded and its metrics are in status.results).
-- Degraded: Failed=True (status.reason/message say why; change spec.retryToken to rerun).
-- Suspended: Suspended=True (spec.suspend).
-- Progressing: no status yet, a status older than the spec (observedGeneration < generation), or
--              Pending / Running / Evaluating.
-- Tested on sample statuses in tests/deploy/test_argocd_health.py.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype and c.status == "True" then
      return c
    end
  end
  return nil
end

local function text(status, fallback)
  local parts = {}
  if status.phase ~= nil then table.insert(parts, status.phase) end
  if status.reason ~= nil and status.reason ~= status.phase then table.insert(parts, "(" .. status.reason .. ")") end
  local head = table.concat(parts, " ")
  if status.message ~= nil and status.message ~= "" then
    if head ~= "" then return head .. ": " .. status.message end
    return status.message
  end
  if head ~= "" then return head end
  return fallback
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the assay operator to reconcile the job"
  return hs
end

local status = obj.status
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status is of generation " .. status.observedGeneration .. ")"
  return hs
end

if condition(status, "Failed") ~= nil or status.phase == "Failed" then
  hs.status = "Degraded"
elseif condition(status, "Ready") ~= nil or status.phase == "Succeeded" then
  hs.status = "Healthy"
elseif condition(status, "Suspended") ~= nil or status.phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = text(status, hs.status)
return hs
