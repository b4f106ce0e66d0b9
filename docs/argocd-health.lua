-- Argo CD health check for depgate.io/DependencyPolicy (argocd-cm key
-- resource.customizations.health.depgate.io_DependencyPolicy; see docs/operations.md).
--
-- It reads what the operator writes: status.observedGeneration and the Stalled, Reconciling and
-- Ready conditions (metav1.Condition, a list keyed by type), first match wins:
--   Progressing  no status yet, or the operator has not observed the latest spec
--                (status.observedGeneration != metadata.generation): the conditions are about an
--                older spec, so none of them counts, not even Stalled
--   Degraded     Stalled is True: depgate cannot apply this policy without a change from you
--                (InvalidSpec, Conflict, DependencyCycle); the message says why
--   Progressing  Reconciling is True (depgate is mid-way), or Ready is not True (preconditions
--                still block: the gated pods wait in Init; the message names what blocks)
--   Healthy      Ready is True for the latest generation
-- Plain Lua 5.1 (Argo CD runs gopher-lua); tests/integration/test_manifests.py runs it against
-- policies the real operator wrote.

local hs = {status = "Progressing", message = "waiting for the depgate operator to report status"}

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.message = "depgate has not observed generation " .. tostring(generation) .. " yet (observedGeneration: "
    .. tostring(observed) .. ")"
  return hs
end

local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end

local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return (c.reason or "") .. ": " .. c.message
  end
  return c.reason or ""
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled)
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = says(reconciling)
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
  return hs
end
if ready ~= nil then
  hs.message = says(ready)
end
return hs
