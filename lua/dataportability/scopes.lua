-- The API's resource groups and their OAuth scopes: the union of Google's
-- discovery document (revision 20241208, 65 groups) and the newer generated
-- clients (8 more), so that a misspelt resource is caught before any I/O.
-- Google keeps adding groups: add(name) teaches the table a new one.
local _M = {}

local PREFIX = "https://www.googleapis.com/auth/dataportability."
_M.PREFIX = PREFIX

local GROUPS = [[
alerts.subscriptions businessmessaging.conversations
chrome.autofill chrome.bookmarks chrome.dictionary chrome.extensions chrome.history
chrome.reading_list chrome.settings
discover.follows discover.likes discover.not_interested
maps.aliased_places maps.commute_routes maps.commute_settings maps.ev_profile
maps.factual_contributions maps.offering_contributions maps.photos_videos
maps.questions_answers maps.reviews maps.starred_places maps.vehicle_profile
myactivity.maps myactivity.myadcenter myactivity.play myactivity.search myactivity.shopping
myactivity.youtube
mymaps.maps
nest.camera_event nest.camera_feature nest.camera_video nest.store nest.user
order_reserve.purchases_reservations
play.devices play.grouping play.installs play.library play.playpoints play.promotions
play.purchases play.redemptions play.subscriptions play.usersettings
saved.collections
search_ugc.comments search_ugc.media.reviews_and_stars search_ugc.media.streaming_video_providers
search_ugc.media.thumbs search_ugc.media.watched
searchnotifications.settings searchnotifications.subscriptions
shopping.addresses shopping.reviews
streetview.imagery
youtube.channel youtube.clips youtube.comments youtube.conversations youtube.live_chat
youtube.music youtube.playable youtube.posts youtube.private_playlists youtube.private_videos
youtube.public_playlists youtube.public_videos youtube.shopping youtube.subscriptions
youtube.unlisted_playlists youtube.unlisted_videos
]]

--- resource group -> scope URL, for every known group.
_M.scopes = {}

--- Adds a resource group the table does not know yet; returns its scope.
function _M.add(resource)
    if type(resource) ~= "string" or not resource:find("^[a-z][a-z0-9_]*%.[a-z0-9_.]*[a-z0-9_]$") then
        error("bad argument #1 to 'add_resource' (a resource group name like 'myactivity.youtube'"
            .. " expected, got " .. tostring(resource) .. ")", 2)
    end
    _M.scopes[resource] = PREFIX .. resource
    return _M.scopes[resource]
end

for name in GROUPS:gmatch("%S+") do
    _M.add(name)
end

--- The scope URL of a known resource group, or nil.
function _M.scope_for(resource)
    return _M.scopes[resource]
end

--- The resource group of a dataportability scope URL, or nil. Scopes are
--- recognised by their prefix, so a group the table does not know is
--- still found.
function _M.resource_for(scope)
    if type(scope) == "string" and scope:sub(1, #PREFIX) == PREFIX and #scope > #PREFIX then
        return scope:sub(#PREFIX + 1)
    end
end

return _M
