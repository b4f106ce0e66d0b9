-- Argo CD health check for depgate.io/DependencyPolicy, in Argo CD's resource_customizations layout
-- (argocd-cm key resource.customizations.health.depgate.io_DependencyPolicy; see docs/operations.md).
--
-- It reads what the operator writes: status.observedGeneration, the Stalled, Reconciling and Ready
-- conditions (metav1.Condition, a list keyed by type) and status.preconditions; first match wins:
--   Progressing  no status yet, or the operator has not observed the latest spec
--                (status.observedGeneration != metadata.generation): the conditions are about an
--                older spec, so none of them counts, not even Stalled
--   Degraded     Stalled is True: depgate cannot apply this policy without a change from you
--                (InvalidSpec, Conflict, DependencyCycle, ContainerNotFound, ...); the message says why
--   Progressing  Reconciling is True (depgate is mid-way)
--   Degraded     a precondition's waiter timed out (exit 124) in a pod, which restarts it
--                (Init:CrashLoopBackOff): its timedOutPods is above 0 or, from an operator that does not
--                write timedOutPods, it blocks with reason Timeout; the message names it
--   Healthy      Ready is True for the latest generation
--   Progressing  otherwise (preconditions still block: the gated pods wait in Init; the message
--                names what blocks)
-- Plain Lua 5.1 with only the base and table libraries (argocd-cm's default: no useOpenLibs), as
-- Argo CD runs it under gopher-lua. health_test.yaml beside it holds Argo CD's test cases;
-- tests/integration/test_kstatus_argocd.py runs them, and this script on policies the real operator
-- wrote, under gopher-lua.

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

for _, p in ipairs(obj.status.preconditions or {}) do
  local pods = p.timedOutPods
  local timed_out = (pods ~= nil and pods > 0) or (pods == nil and p.state == "Blocking" and p.reason == "Timeout")
  if timed_out then
    local where = "a pod, which restarts"
    if pods ~= nil and pods > 1 then
      where = tostring(pods) .. " pods, which restart"
    end
    hs.status = "Degraded"
    hs.message = "precondition " .. tostring(p.name) .. " timed out (exit 124) in " .. where
      .. " its init container depgate-" .. tostring(p.name) .. " (Init:CrashLoopBackOff): " .. says(p)
    return hs
  end
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
