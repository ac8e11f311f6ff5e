-- ARGV: ids. Returns the fields of each (nil fields when gone).
local out = {}
for i = 1, #ARGV do out[i] = fields(ARGV[i]) end
return out
