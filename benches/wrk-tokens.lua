-- wrk script for `make bench`: every request carries the next token of the file named by
-- MESHGUARD_TOKENS (one per line), cycling; without the variable, requests carry no token.
local tokens = {}
local path = os.getenv("MESHGUARD_TOKENS")
if path and path ~= "" then
  for line in io.lines(path) do
    if line ~= "" then tokens[#tokens + 1] = "Bearer " .. line end
  end
end
local next_token = 0

request = function()
  if #tokens == 0 then
    return wrk.format("GET", "/api/orders")
  end
  next_token = next_token % #tokens + 1
  return wrk.format("GET", "/api/orders", { ["authorization"] = tokens[next_token] })
end
