"""The API's caps that the bench's scenarios stay within."""

# The API's cap of one user's contact list.
MAX_CONTACTS = 5000
# The API's group cap, owner included.
MAX_GROUP_MEMBERS = 1024
